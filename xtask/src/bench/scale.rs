//! Control-plane scale: 1,000 / 5,000 / 10,000 simulated nodes, each on its own TCP
//! connection sending a heartbeat 10 times a second (`heartbeat_ms: 100`), against one
//! `halod run` pinned to CPU 1. Measured, in order:
//!
//! 1. **Cold join storm.** Every simulated node connects and says `hello` at once (no
//!    pacing: as fast as the generator can send), from another namespace (node 1's)
//!    through the test bed's veth. Timed from the release of the storm to each `welcome`:
//!    the last one, and how many came within 2 s. Meanwhile `halod status` runs every
//!    100 ms (the real command, process start included) and its slowest answer is kept,
//!    and the daemon's log is searched for its stall warning.
//! 2. **Steady heartbeats.** The daemon's resident memory per node (VmRSS after the storm
//!    minus before, divided by the nodes) and its CPU time (utime + stime from /proc/PID/stat)
//!    over a window of heartbeats, with the rate the generator offered.
//! 3. **Failure detection** at that load: a node goes silent (keeps its connection, stops
//!    heartbeats) and we time its last heartbeat -> the gateway closing its connection (it
//!    fails the node, tells the nodes that take its routes, then closes). Only the victim's
//!    own connection is watched.
//! 4. **Reconnect storm.** The daemon is killed (SIGKILL) and started again; every node
//!    sees its connection end and, once the new daemon listens, reconnects at once. Timed
//!    from the release of the storm to the last `welcome`; counted: nodes the daemon failed
//!    (its `node failed` warnings) and `moved` or `assigned` messages any node got (both
//!    must be 0: within `restart_grace_ms`, no route moves).
//!
//! The load generator is a tokio runtime on two threads, on both CPUs at nice 10 (the
//! daemon goes first). Each simulated node has its own name and hello address
//! (198.19.16.1 ...; the gateway only forwards to them, it never connects). 10,000
//! connections stay under the 20,000 open files of one process and the 28,000 ephemeral
//! ports of one source address, so one process suffices.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::halod::{GatewaySettings, INSTANCE, NODES_LISTEN, config_text};
use super::objects::Objects;
use super::process::Process;
use super::traffic::{process_cpu_ns, rss_bytes};
use super::victims::Victims;
use crate::testbed::{Testbed, netns_command, spawn_in_netns};

pub const HEARTBEAT_MS: u64 = 100;
/// A longer dead window than the default 3: with thousands of nodes, the load generator
/// shares this 2-core machine with the daemon and other work, and its own delays must not
/// fail simulated nodes. Detection is reported against this window.
pub const DEAD_AFTER: u32 = 30;
/// `nodes.drain_ms` of the daemon (its default).
const DRAIN: Duration = Duration::from_secs(30);
/// `nodes.restart_grace_ms` for the reconnect storm.
pub const RESTART_GRACE_MS: u64 = 30_000;
/// The storm's target: every node welcomed within this long.
pub const STORM_TARGET: Duration = Duration::from_secs(2);
const VICTIMS: usize = 3;
const GENERATOR_NICE: libc::c_int = 10;
/// How often `halod status` is asked during a storm.
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// The daemon's warning when its manager did not run for longer than a heartbeat.
const STALL_WARNING: &str = "was not running (stalled or paused)";

#[derive(Debug, Clone)]
pub struct Point {
    pub nodes: usize,
    pub join: Storm,
    pub rss_idle: u64,
    pub rss_loaded: u64,
    /// VmRSS once the drains of the join storm ended (`nodes.drain_ms` after it).
    pub rss_settled: u64,
    pub cpu_percent: f64,
    pub heartbeats_per_second: f64,
    pub detection_ms: Vec<f64>,
    pub reconnect: Result<Storm, String>,
}

/// One storm of hellos: the cold join or the reconnect after a daemon restart.
#[derive(Debug, Clone)]
pub struct Storm {
    /// From the release of the storm to the last `welcome`.
    pub seconds: f64,
    /// Nodes welcomed within [`STORM_TARGET`].
    pub within_target: usize,
    /// The slowest `halod status` while the storm went on (ms), and how many ran.
    pub status_max_ms: f64,
    pub status_calls: usize,
    /// `halod status` calls that got no answer (its own 5 s timeout).
    pub status_failures: usize,
    /// Stall warnings the daemon logged.
    pub stalls: usize,
    /// Nodes the daemon failed.
    pub failed: usize,
    /// The longest TCP connect and the longest `hello` -> `welcome` (ms).
    pub connect_max_ms: f64,
    pub answer_max_ms: f64,
    /// `moved` and `assigned` messages the nodes got after the storm began (a reconnect
    /// storm must move nothing; a join storm moves routes, so this is not reported).
    pub route_messages: u64,
}

impl Point {
    /// Right after the storm, while its drains are open.
    pub fn bytes_per_node(&self) -> f64 {
        (self.rss_loaded as f64 - self.rss_idle as f64) / self.nodes as f64
    }

    /// Once the storm's drains ended: what the nodes themselves hold.
    pub fn settled_bytes_per_node(&self) -> f64 {
        (self.rss_settled as f64 - self.rss_idle as f64) / self.nodes as f64
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
                "bench:   join storm {:.2} s ({} of {nodes} within {} s, status <= {:.0} ms, \
                 {} stalls, connect <= {:.0} ms, hello -> welcome <= {:.0} ms); {:.0} B/node \
                 ({:.0} once the drains ended), {:.1}% CPU at {:.0} hb/s, detection {:?} ms; \
                 reconnect storm {}",
                p.join.seconds,
                p.join.within_target,
                STORM_TARGET.as_secs(),
                p.join.status_max_ms,
                p.join.stalls,
                p.join.connect_max_ms,
                p.join.answer_max_ms,
                p.bytes_per_node(),
                p.settled_bytes_per_node(),
                p.cpu_percent,
                p.heartbeats_per_second,
                p.detection_ms,
                match &p.reconnect {
                    Ok(r) => format!(
                        "{:.2} s ({} failed, {} route messages, status <= {:.0} ms, {} stalls, \
                         connect <= {:.0} ms, hello -> welcome <= {:.0} ms)",
                        r.seconds,
                        r.failed,
                        r.route_messages,
                        r.status_max_ms,
                        r.stalls,
                        r.connect_max_ms,
                        r.answer_max_ms
                    ),
                    Err(e) => format!("failed: {e}"),
                }
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
    /// Storms whose connections may open: 1 = the cold join, 2 = the reconnect.
    connects: watch::Sender<u64>,
    /// Connections open for the current storm.
    connected: AtomicU64,
    /// Storms released so far: a connected node says `hello` once this reaches its
    /// storm.
    storms: watch::Sender<u64>,
    /// When the current storm was released (ns since base).
    released_at: AtomicU64,
    /// Welcomes in the current storm, those within the target, and the last one's time.
    welcomed: AtomicU64,
    within_target: AtomicU64,
    last_welcome: AtomicU64,
    failed: AtomicU64,
    heartbeats: AtomicU64,
    /// `moved` / `assigned` messages received.
    route_messages: AtomicU64,
    /// The longest TCP connect and the longest wait from `hello` to `welcome` in the
    /// current storm (ns): where a storm's time goes.
    connect_max: AtomicU64,
    answer_max: AtomicU64,
    /// Connections that ended while a restart was announced (`restarting`).
    restarting: AtomicBool,
    victims: Victims,
}

impl Shared {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Releases storm `n` and resets its counts.
    fn release(&self, n: u64) {
        self.welcomed.store(0, Ordering::SeqCst);
        self.within_target.store(0, Ordering::SeqCst);
        self.last_welcome.store(0, Ordering::SeqCst);
        self.answer_max.store(0, Ordering::SeqCst);
        self.released_at.store(self.now(), Ordering::SeqCst);
        self.storms.send_replace(n);
    }

    fn welcome(&self) {
        let now = self.now();
        let since = now.saturating_sub(self.released_at.load(Ordering::SeqCst));
        if since <= STORM_TARGET.as_nanos() as u64 {
            self.within_target.fetch_add(1, Ordering::SeqCst);
        }
        self.last_welcome.fetch_max(now, Ordering::SeqCst);
        self.welcomed.fetch_add(1, Ordering::SeqCst);
    }
}

fn sim_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 16 + (i / 250) as u8, 1 + (i % 250) as u8)
}

fn start_daemon(bed: &Testbed, objects: &Objects, path: &Path) -> Result<Process> {
    // On both CPUs, as on a gateway: the generator, niced, takes what it leaves.
    let mut cmd = netns_command(&bed.gateway_ns(), &objects.halod.display().to_string());
    cmd.args(["run", "--config"])
        .arg(path)
        .env("HALOD_LOG", "warn");
    let process = Process::start("halod run", &mut cmd)?;
    // With HALOD_LOG=warn the daemon says nothing when ready: wait for its port.
    wait_for_port(bed)?;
    Ok(process)
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
    std::fs::write(
        &path,
        config_text(&settings) + &format!("  restart_grace_ms: {RESTART_GRACE_MS}\n"),
    )?;
    let mut daemon =
        super::halod::Gateway::new(start_daemon(bed, objects, &path)?, &objects.halod, &path);
    thread::sleep(Duration::from_millis(300));
    let rss_idle = rss_bytes(daemon.pid())?;

    let (storms, _) = watch::channel(0);
    let (connects, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        base: Instant::now(),
        stop: AtomicBool::new(false),
        connects,
        connected: AtomicU64::new(0),
        storms,
        released_at: AtomicU64::new(0),
        welcomed: AtomicU64::new(0),
        within_target: AtomicU64::new(0),
        last_welcome: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        heartbeats: AtomicU64::new(0),
        route_messages: AtomicU64::new(0),
        connect_max: AtomicU64::new(0),
        answer_max: AtomicU64::new(0),
        restarting: AtomicBool::new(false),
        victims: Victims::default(),
    });
    let generator = {
        let shared = shared.clone();
        // Another namespace than the daemon's: the hellos cross the test bed's veth.
        spawn_in_netns(&bed.node_ns(1), move || -> Result<()> {
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
    let socket = std::env::temp_dir().join(format!("{INSTANCE}.sock"));
    let result = (|| -> Result<Point> {
        let join = storm(1, nodes, &shared, &mut daemon, &objects.halod, &socket)?;
        let storm_end = Instant::now();
        let pid = daemon.pid();
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
        let detection_ms = detect(nodes, &shared)?;
        // The storm's drains end `drain_ms` after it (rounded up to the manager's
        // 100 ms steps), and the next sweep gives their memory back.
        let settled = storm_end + DRAIN + Duration::from_millis(1_500);
        thread::sleep(settled.saturating_duration_since(Instant::now()));
        let rss_settled = rss_bytes(pid)?;
        let reconnect = restart(nodes, &shared, &mut daemon, bed, objects, &path, &socket)
            .map_err(|e| format!("{e:#}"));
        Ok(Point {
            nodes,
            join,
            rss_idle,
            rss_loaded,
            rss_settled,
            cpu_percent: 100.0 * cpu as f64 / 1e9 / elapsed,
            heartbeats_per_second: heartbeats,
            detection_ms,
            reconnect,
        })
    })();
    shared.stop.store(true, Ordering::SeqCst);
    // Tasks still waiting for a storm are let go.
    shared.connects.send_replace(u64::MAX);
    shared.storms.send_replace(u64::MAX);
    let generated = generator.join();
    drop(daemon); // stops the daemon, then `halod teardown`
    let point = result?;
    match generated {
        Ok(Ok(Ok(()))) => Ok(point),
        Ok(Ok(Err(e))) | Ok(Err(e)) => Err(e.context("the load generator")),
        Err(_) => bail!("the load generator panicked"),
    }
}

/// Releases storm `n` and waits until all `nodes` are welcomed, asking `halod status`
/// every [`STATUS_EVERY`] meanwhile.
fn storm(
    n: u64,
    nodes: usize,
    shared: &Shared,
    daemon: &mut Process,
    halod: &Path,
    socket: &Path,
) -> Result<Storm> {
    // Every node connects first; the storm is their hellos, all at once.
    shared.connected.store(0, Ordering::SeqCst);
    shared.connect_max.store(0, Ordering::SeqCst);
    shared.connects.send_replace(n);
    let connecting = Instant::now();
    while (shared.connected.load(Ordering::SeqCst) as usize) < nodes {
        if shared.failed.load(Ordering::SeqCst) > 0 {
            bail!(
                "{} simulated nodes could not connect",
                shared.failed.load(Ordering::SeqCst)
            );
        }
        if connecting.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {nodes} nodes connected in 120 s",
                shared.connected.load(Ordering::SeqCst)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(300));
    let messages_before = shared.route_messages.load(Ordering::SeqCst);
    let mut status_max = Duration::ZERO;
    let mut status_calls = 0;
    let mut status_failures = 0;
    let mut log = Vec::new();
    shared.release(n);
    let start = Instant::now();
    while (shared.welcomed.load(Ordering::SeqCst) as usize) < nodes {
        if shared.failed.load(Ordering::SeqCst) > 0 {
            log.extend(daemon.drain());
            bail!(
                "{} simulated nodes could not register (welcomed {}); the daemon said: {:?}",
                shared.failed.load(Ordering::SeqCst),
                shared.welcomed.load(Ordering::SeqCst),
                log
            );
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {nodes} nodes were welcomed in 120 s",
                shared.welcomed.load(Ordering::SeqCst)
            );
        }
        let asked = Instant::now();
        let output = Command::new(halod)
            .arg("status")
            .arg("--socket")
            .arg(socket)
            .output()
            .context("running halod status")?;
        if !output.status.success() {
            // No answer within its 5 s timeout (a daemon swamped by the storm): counted.
            status_failures += 1;
        }
        status_max = status_max.max(asked.elapsed());
        status_calls += 1;
        log.extend(daemon.drain());
        thread::sleep(STATUS_EVERY.saturating_sub(asked.elapsed()));
    }
    let released = shared.released_at.load(Ordering::SeqCst);
    let seconds = shared
        .last_welcome
        .load(Ordering::SeqCst)
        .saturating_sub(released) as f64
        / 1e9;
    // What the daemon logged until a moment after the last welcome.
    thread::sleep(Duration::from_millis(200));
    log.extend(daemon.drain());
    Ok(Storm {
        seconds,
        within_target: shared.within_target.load(Ordering::SeqCst) as usize,
        status_max_ms: status_max.as_secs_f64() * 1e3,
        status_calls,
        status_failures,
        stalls: log.iter().filter(|l| l.contains(STALL_WARNING)).count(),
        failed: log.iter().filter(|l| l.contains("node failed")).count(),
        route_messages: shared.route_messages.load(Ordering::SeqCst) - messages_before,
        connect_max_ms: shared.connect_max.load(Ordering::SeqCst) as f64 / 1e6,
        answer_max_ms: shared.answer_max.load(Ordering::SeqCst) as f64 / 1e6,
    })
}

/// Failure detection: three nodes go silent one after the other.
fn detect(nodes: usize, shared: &Shared) -> Result<Vec<f64>> {
    shared.victims.measure(
        nodes,
        VICTIMS,
        Duration::from_secs(2),
        Duration::from_secs(10),
    )
}

/// The reconnect storm: SIGKILL, a new daemon, every live node back at once.
fn restart(
    nodes: usize,
    shared: &Shared,
    daemon: &mut super::halod::Gateway,
    bed: &Testbed,
    objects: &Objects,
    path: &Path,
    socket: &Path,
) -> Result<Storm> {
    // The victims of `detect` were failed: the others reconnect.
    let live = nodes - VICTIMS;
    shared.restarting.store(true, Ordering::SeqCst);
    daemon.signal(Signal::SIGKILL)?;
    let killed = Instant::now();
    while shared.welcomed.load(Ordering::SeqCst) > 0 || killed.elapsed() < Duration::from_secs(1) {
        // Wait until the nodes saw their connections end (`node` counts them down).
        if killed.elapsed() > Duration::from_secs(10) {
            bail!(
                "{} nodes did not see the killed daemon's connection end",
                shared.welcomed.load(Ordering::SeqCst)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    daemon.replace(start_daemon(bed, objects, path)?);
    let storm = storm(2, live, shared, daemon, &objects.halod, socket)?;
    shared.restarting.store(false, Ordering::SeqCst);
    Ok(storm)
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
    let mut tasks = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = node(i, nodes, &shared).await {
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

/// Waits until storm `n` is released; `false` when the run stops instead.
async fn released(shared: &Shared, n: u64) -> bool {
    let mut storms = shared.storms.subscribe();
    let _ = storms.wait_for(|&released| released >= n).await;
    !shared.stop.load(Ordering::SeqCst)
}

/// One simulated node: joins in storm 1, heartbeats, and after the daemon is killed
/// reconnects in storm 2.
async fn node(i: usize, nodes: usize, shared: &Shared) -> Result<()> {
    for n in 1..=2 {
        let mut connects = shared.connects.subscribe();
        let _ = connects.wait_for(|&storm| storm >= n).await;
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let connecting = shared.now();
        let stream = TcpStream::connect(NODES_LISTEN)
            .await
            .with_context(|| format!("connecting to {NODES_LISTEN}"))?;
        shared
            .connect_max
            .fetch_max(shared.now() - connecting, Ordering::Relaxed);
        shared.connected.fetch_add(1, Ordering::SeqCst);
        if !released(shared, n).await {
            return Ok(());
        }
        match session(i, nodes, stream, shared).await? {
            Ended::Stopped | Ended::Failed => return Ok(()),
            Ended::Restarted => continue,
        }
    }
    Ok(())
}

enum Ended {
    /// The run is over.
    Stopped,
    /// This node went silent and the gateway failed it.
    Failed,
    /// The daemon was killed: the node reconnects in the next storm.
    Restarted,
}

async fn session(i: usize, nodes: usize, stream: TcpStream, shared: &Shared) -> Result<Ended> {
    let said_hello = shared.now();
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
    shared
        .answer_max
        .fetch_max(shared.now() - said_hello, Ordering::Relaxed);
    shared.welcome();
    // Spread the heartbeats of all nodes over the interval.
    let offset = Duration::from_micros((HEARTBEAT_MS * 1000) * i as u64 / nodes as u64);
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + offset,
        Duration::from_millis(HEARTBEAT_MS),
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent = false;
    // When this node's last heartbeat left (ns since base).
    let mut last_sent = 0;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(Ended::Stopped);
        }
        tokio::select! {
            _ = ticks.tick() => {
                if silent {
                    continue;
                }
                if shared.victims.is(i) {
                    silent = true;
                    shared.victims.stopped(last_sent);
                    continue;
                }
                if writer.write_all(b"{\"type\":\"hb\"}\n").await.is_err()
                    && shared.restarting.load(Ordering::SeqCst)
                {
                    shared.welcomed.fetch_sub(1, Ordering::SeqCst);
                    return Ok(Ended::Restarted);
                }
                last_sent = shared.now();
                shared.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            line = lines.next_line() => {
                match line {
                    // What the gateway tells a live node is not timed, only counted.
                    Ok(Some(line)) => {
                        if line.contains("\"moved\"") || line.contains("\"assigned\"") {
                            shared.route_messages.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    end => {
                        if silent {
                            // A failed (silent) node's connection is closed by the gateway.
                            shared.victims.failed(shared.now());
                            shared.welcomed.fetch_sub(1, Ordering::SeqCst);
                            return Ok(Ended::Failed);
                        }
                        if shared.restarting.load(Ordering::SeqCst) {
                            shared.welcomed.fetch_sub(1, Ordering::SeqCst);
                            return Ok(Ended::Restarted);
                        }
                        if shared.stop.load(Ordering::Relaxed) {
                            return Ok(Ended::Stopped);
                        }
                        end?;
                        bail!("the gateway closed the connection");
                    }
                }
            }
        }
    }
}
